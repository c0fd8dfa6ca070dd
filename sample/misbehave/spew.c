/*
 * spew: WASI command that writes to stdout forever: 64 KiB blocks of 'x'
 * in an endless loop. Write errors (a full disk, a closed pipe, a host-side
 * output cap) are ignored and it keeps going, so only the host's time or fuel
 * limit ends it; the host must also bound how much output it keeps.
 */
#include <string.h>
#include <unistd.h>

static char block[64 * 1024];

int main(void) {
    memset(block, 'x', sizeof block);
    for (;;) {
        (void)write(1, block, sizeof block);
    }
}
