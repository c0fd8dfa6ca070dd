;; hidden: export `hidden(pages: i32) -> i32` growing an UNEXPORTED memory by `pages`
;; 64 KiB pages and touching every byte, then returning its size in pages (-1 if the
;; growth was refused). Deleting the Store unmaps what was touched (7 ms for 64 MiB):
;; the agent must decide from the module's type, not from an exported memory, that it
;; releases the GIL for that, or the event loop stalls.
(module
  (memory $m 1)
  (func (export "hidden") (param $pages i32) (result i32)
    (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
      (then (return (i32.const -1))))
    (memory.fill (i32.const 0) (i32.const 1) (i32.mul (memory.size) (i32.const 65536)))
    (memory.size)))
