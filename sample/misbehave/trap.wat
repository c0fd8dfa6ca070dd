;; trap: export `trap() -> i32` that executes `unreachable` (wasmtime: Trap
;; with TrapCode.UNREACHABLE).
(module
  (func $trap (export "trap") (result i32)
    (unreachable)))
