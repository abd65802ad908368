/* A program built on the host with its C compiler, dynamically linked against the
 * host's glibc: examples/debian.test.lua runs it in a Debian guest as it is. */
#include <stdio.h>
#include <gnu/libc-version.h>

int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] == '-') {
        printf("hello 1.0 (glibc %s)\n", gnu_get_libc_version());
        return 0;
    }
    printf("hello from a host-built binary\n");
    return 0;
}
