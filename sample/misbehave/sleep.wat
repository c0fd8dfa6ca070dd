;; sleep: export `sleep(ms: i32) -> i32`, an export-ABI module that imports WASI's
;; poll_oneoff and waits `ms` milliseconds on one relative clock subscription, then
;; returns 7. Epochs and fuel do not interrupt a host call: the host's poll_oneoff must
;; itself end the call at its deadline (a guest may ask for up to 2^64 ns).
;; Memory: subscription (48 bytes) at 0, event (32 bytes) at 64, nevents at 96.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "sleep") (param $ms i32) (result i32)
    (i64.store (i32.const 0) (i64.const 42))   ;; userdata
    (i32.store8 (i32.const 8) (i32.const 0))   ;; tag: clock
    (i32.store (i32.const 16) (i32.const 1))   ;; clock id: monotonic
    (i64.store (i32.const 24)                  ;; timeout, ns
      (i64.mul (i64.extend_i32_u (local.get $ms)) (i64.const 1000000)))
    (i32.store16 (i32.const 40) (i32.const 0)) ;; flags: relative
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 96)))
    (i32.const 7)))
