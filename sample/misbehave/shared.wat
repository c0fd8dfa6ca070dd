;; shared: export `shared() -> i32` with a shared linear memory (threads proposal). A
;; shared memory can outlive the Store that made it; the agent refuses it at deploy.
(module
  (memory (export "memory") 1 16 shared)
  (func (export "shared") (result i32) (i32.const 1)))
