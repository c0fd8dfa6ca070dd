/*
 * exit3: WASI command that writes "something went wrong" (plus a newline) to
 * stderr, nothing to stdout, and exits with status 3 (wasmtime: ExitTrap
 * with .code == 3).
 */
#include <stdio.h>

int main(void) {
    fputs("something went wrong\n", stderr);
    return 3;
}
