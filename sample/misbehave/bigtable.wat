;; bigtable: export `bigtable(n: i32) -> i32`: table.grow by n null funcrefs (8 bytes
;; each in wasmtime) and returns the table's new size, or -1 if the host refused the
;; growth. Without a cap on table elements, 60 million elements add ~457 MiB under any
;; memory limit; the agent caps each table (-max-table-elements, default 100000).
(module
  (table $t 1 funcref)
  (memory (export "memory") 1)
  (func (export "bigtable") (param $n i32) (result i32)
    (if (result i32) (i32.eq (table.grow $t (ref.null func) (local.get $n)) (i32.const -1))
      (then (i32.const -1))
      (else (table.size $t)))))
