;; flood: WASI command writing 64 KiB blocks to stdout for ever, ignoring errors: only
;; the host's output cap (or time limit) ends it. The cap must end it at once, and the
;; agent must never hold more than the cap (plus 1 MiB) of its output.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $again
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $again))))
