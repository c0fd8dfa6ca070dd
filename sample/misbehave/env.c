/*
 * env: WASI command that reports what the host passes in, as one JSON line:
 * {"env_count":N,"args_count":M}, N the number of environment variables and
 * M = argc (the program name, if the host sets one, counts as an argument).
 * A host that passes no environment and no arguments gives
 * {"env_count":0,"args_count":0}. Exits 0.
 */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
    (void)argv;
    int n = 0;
    if (environ)
        while (environ[n]) n++;
    printf("{\"env_count\":%d,\"args_count\":%d}\n", n, argc);
    return 0;
}
