// double: the TinyGo source of sample/double/double.c (the "export" ABI).
//
// Exports `double(i32) -> i32`, returning its argument times two (Go's int32
// multiplication wraps around, like Wasm's i32.mul, so negatives work).
//
// Alternative recipe (TinyGo is not part of this repository's toolchain, and
// the committed double.wasm is built from double.c):
//
//	tinygo build -o double.wasm -target=wasi ./sample/double
//
// Unlike the C build, a TinyGo module imports a few WASI functions
// (wasi_snapshot_preview1), so it needs a linker with WASI defined rather
// than an empty one.
package main

//export double
func double(x int32) int32 {
	return x * 2
}

// main is required by TinyGo's wasi target; it is never called by the host.
func main() {}
