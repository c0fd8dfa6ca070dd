;; recurse: export `recurse(i32) -> i32` that calls itself without bound (the
;; call is not in tail position), so any call ends in a stack-overflow trap
;; (wasmtime: Trap with TrapCode.STACK_OVERFLOW); the host must survive it.
(module
  (func $recurse (export "recurse") (param $n i32) (result i32)
    (i32.add
      (call $recurse (i32.add (local.get $n) (i32.const 1)))
      (i32.const 1))))
