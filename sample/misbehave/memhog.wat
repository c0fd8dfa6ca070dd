;; memhog: export `memhog() -> i32`. Calls memory.grow(1) until it returns -1
;; (the host's memory cap, or the 4 GiB wasm32 limit if there is no cap), then
;; returns the number of 64 KiB pages the memory holds (memory.size). A test
;; that caps memory at N bytes expects at most N / 65536. Growing does not
;; trap: with wasmtime's Store.set_limits(memory_size=...) memory.grow just
;; returns -1. The memory starts at 1 page and declares no maximum, so the cap
;; comes from the host; it is exported as "memory" for inspection.
(module
  (memory (export "memory") 1)
  (func $memhog (export "memhog") (result i32)
    (block $capped
      (loop $grow
        (br_if $capped (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))
    (memory.size)))
