;; memories: export `memories() -> i32` with 8 linear memories (multi-memory), each
;; grown by 960 pages (60 MiB) and touched. A per-memory limit would let it take
;; 8 x the call's memory; the agent refuses multi-memory at deploy (400 invalid_module).
(module
  (memory $m0 1) (memory $m1 1) (memory $m2 1) (memory $m3 1)
  (memory $m4 1) (memory $m5 1) (memory $m6 1) (memory (export "memory") 1)
  (func (export "memories") (result i32)
    (drop (memory.grow $m0 (i32.const 960))) (memory.fill $m0 (i32.const 0) (i32.const 1) (i32.const 62914560))
    (drop (memory.grow $m1 (i32.const 960))) (memory.fill $m1 (i32.const 0) (i32.const 1) (i32.const 62914560))
    (drop (memory.grow $m2 (i32.const 960))) (memory.fill $m2 (i32.const 0) (i32.const 1) (i32.const 62914560))
    (drop (memory.grow $m3 (i32.const 960))) (memory.fill $m3 (i32.const 0) (i32.const 1) (i32.const 62914560))
    (i32.const 8)))
