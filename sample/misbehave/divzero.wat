;; divzero: export `divzero(i32) -> i32` returning 100 / arg (signed, rounded
;; toward zero): divzero(5) == 20, divzero(-3) == -33, and divzero(0) traps
;; with "integer divide by zero" (TrapCode.INTEGER_DIVISION_BY_ZERO).
(module
  (func $divzero (export "divzero") (param $d i32) (result i32)
    (i32.div_s (i32.const 100) (local.get $d))))
