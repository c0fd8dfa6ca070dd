/*
 * openfile: WASI command that tries to escape the sandbox's filesystem view.
 *
 * Tries fopen(path, "r") on "/etc/passwd", "/tmp/x" and "." and prints one
 * JSON line to stdout: {"opened":false} if every open failed (the expected
 * result: with no preopened directory a WASI module can open nothing), or
 * {"opened":true} if any succeeded. Exits 0 either way. The outcome of each
 * attempt (with errno text) goes to stderr, for debugging.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    static const char *const paths[] = {"/etc/passwd", "/tmp/x", "."};
    int opened = 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        errno = 0;
        FILE *f = fopen(paths[i], "r");
        if (f) {
            opened = 1;
            fprintf(stderr, "openfile: opened %s\n", paths[i]);
            fclose(f);
        } else {
            fprintf(stderr, "openfile: cannot open %s: %s\n", paths[i], strerror(errno));
        }
    }
    printf("{\"opened\":%s}\n", opened ? "true" : "false");
    return 0;
}
