;; nofunc: a valid module with a single export, a memory, and no functions at
;; all: a host must reject it (or any request for an export of it) cleanly.
(module
  (memory (export "memory") 1))
