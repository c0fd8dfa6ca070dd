;; loop: export `loop() -> i32` that never returns (an endless loop with no
;; calls and no memory access). Proves the wall-clock limit (epoch deadline)
;; or the fuel limit stops a runaway call.
(module
  (func $loop (export "loop") (result i32)
    (loop $forever
      (br $forever))
    (unreachable)))
