;; gcheap: export `gcheap(n: i32) -> i32` allocating n GC arrays of 1 MiB each (wasm GC
;; proposal): memory outside every linear memory. The agent turns GC off and refuses the
;; module at deploy (400 invalid_module naming GC).
(module
  (type $bytes (array (mut i8)))
  (memory (export "memory") 1)
  (func (export "gcheap") (param $n i32) (result i32)
    (local $keep (ref null $bytes))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $keep (array.new_default $bytes (i32.const 1048576)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $more)))
    (i32.const 0)))
