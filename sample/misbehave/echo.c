/*
 * echo: WASI command copying stdin to stdout unchanged, byte for byte (no
 * newline added), until end of input; exits 0, or 1 on an I/O error. Useful to
 * check that input reaches a module and output comes back intact (JSON round
 * trips, binary data, large payloads).
 */
#include <stdio.h>

int main(void) {
    static char buf[64 * 1024];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        if (fwrite(buf, 1, n, stdout) != n) {
            fputs("echo: cannot write stdout\n", stderr);
            return 1;
        }
    }
    if (ferror(stdin)) {
        fputs("echo: cannot read stdin\n", stderr);
        return 1;
    }
    if (fflush(stdout) != 0) {
        fputs("echo: cannot write stdout\n", stderr);
        return 1;
    }
    return 0;
}
