/*
 * double: Nebula-Edge's headline sample ("export" ABI).
 *
 * Exports `double(i32) -> i32`, returning its argument times two, with
 * two's-complement wrap-around (like Wasm's i32.mul), so it is defined for
 * every input, negative ones included: double(-5) == -10,
 * double(0x40000000) == INT32_MIN.
 *
 * `double` is a C keyword, so the C function has another name and the Wasm
 * export name is set with the export_name attribute.
 *
 * Built freestanding (no libc, no entry point) so the module has no imports
 * and instantiates with an empty wasmtime Linker:
 *   python -m ziglang cc --target=wasm32-wasi -O2 -nostdlib -Wl,--no-entry \
 *       -Wl,-z,stack-size=16384 -Wl,--initial-memory=65536 -s \
 *       -o double.wasm double.c
 * (or run `make samples` / `python sample/build.py`).
 */
#include <stdint.h>

__attribute__((export_name("double")))
int32_t double_i32(int32_t x) {
    /* Multiply as unsigned: signed overflow would be undefined behaviour in C. */
    return (int32_t)((uint32_t)x * 2u);
}
