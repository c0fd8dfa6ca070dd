;; calc: several exports of different value types, none named "calc":
;;   add(i64, i64) -> i64          wrapping 64-bit addition
;;   mulf(f64, f64) -> f64         product
;;   divmod(i32, i32) -> (i32, i32) signed quotient and remainder (multi-value
;;                                  result; divisor 0 traps)
;;   neg(f32) -> f32               negation (flips the sign bit: neg(0) == -0)
;;   noparams() -> i32             always 7
(module
  (func (export "add") (param i64 i64) (result i64)
    (i64.add (local.get 0) (local.get 1)))
  (func (export "mulf") (param f64 f64) (result f64)
    (f64.mul (local.get 0) (local.get 1)))
  (func (export "divmod") (param i32 i32) (result i32 i32)
    (i32.div_s (local.get 0) (local.get 1))
    (i32.rem_s (local.get 0) (local.get 1)))
  (func (export "neg") (param f32) (result f32)
    (f32.neg (local.get 0)))
  (func (export "noparams") (result i32)
    (i32.const 7)))
