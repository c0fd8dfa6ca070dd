;; counter: export `counter() -> i32` that increments a (non-exported)
;; mutable global starting at 0 and returns its new value. Within one instance
;; successive calls return 1, 2, 3, ...; a host that gives every call a fresh
;; Store/instance therefore returns 1 from every call, proving that no state
;; survives between calls.
(module
  (global $n (mut i32) (i32.const 0))
  (func $counter (export "counter") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (global.get $n)))
