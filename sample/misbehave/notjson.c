/*
 * notjson: WASI command that prints "hello, world" and a newline to stdout
 * (not JSON) and exits 0: a host expecting JSON output must report it
 * cleanly.
 */
#include <stdio.h>

int main(void) {
    fputs("hello, world\n", stdout);
    return 0;
}
