//! Learning-rate schedules: pure functions of the update index, evaluated on the host
//! before every step and written into the optimizer's per-step uniform, so a schedule never
//! rebuilds the compiled plan.
//!
//! t = index of the update (0 for the first), lr0 = the optimizer's base rate.
//!   constant: lr(t) = lr0
//!   step:     lr(t) = lr0 * gamma^floor(t / every)             (PyTorch StepLR, in steps)
//!   cosine:   lr(t) = min + (lr0 - min) * (1 + cos(pi * p)) / 2,
//!             p = min(1, (t - warmup) / (horizon - warmup))    (CosineAnnealingLR)
//!   warmup:   lr(t) *= (t + 1) / warmup for t < warmup         (composes with all three)
//! Step and cosine count in optimizer steps; the command line converts epochs to steps
//! (`--lr-step-epochs N` is N epochs of steps; the cosine horizon is the run's --epochs).

use serde_json::{json, Value};

/// How the rate decays after the warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Decay {
    #[default]
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step { every: u64, gamma: f32 },
    /// Half a cosine from lr0 down to `min_lr` at step `horizon`, then `min_lr`.
    Cosine { horizon: u64, min_lr: f32 },
}

/// A decay plus an optional linear warmup over the first `warmup` steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Schedule {
    pub decay: Decay,
    pub warmup: u64,
}

impl Schedule {
    pub const CONSTANT: Schedule = Schedule {
        decay: Decay::Constant,
        warmup: 0,
    };

    /// The rate of update `t` (0-based) for base rate `lr0`, in f64.
    pub fn lr(&self, lr0: f64, t: u64) -> f64 {
        let base = match self.decay {
            Decay::Constant => lr0,
            Decay::Step { every, gamma } => {
                let k = t / every.max(1);
                lr0 * (gamma as f64).powi(k.min(i32::MAX as u64) as i32)
            }
            Decay::Cosine { horizon, min_lr } => {
                let span = horizon.saturating_sub(self.warmup).max(1) as f64;
                let p = (t.saturating_sub(self.warmup) as f64 / span).min(1.0);
                let min = min_lr as f64;
                min + (lr0 - min) * (1.0 + (std::f64::consts::PI * p).cos()) / 2.0
            }
        };
        if t < self.warmup {
            base * (t + 1) as f64 / self.warmup as f64
        } else {
            base
        }
    }

    /// Refuse settings that cannot describe a schedule, naming the flag.
    pub fn check(&self, lr0: f32) -> crate::Result<()> {
        let bad = |flag: &str, msg: String| Err(crate::Error::usage(flag, msg));
        match self.decay {
            Decay::Constant => Ok(()),
            Decay::Step { every, gamma } => {
                if every == 0 {
                    return bad("--lr-step-epochs", "must be at least 1".into());
                }
                if !(gamma.is_finite() && gamma > 0.0 && gamma <= 1.0) {
                    return bad("--lr-gamma", format!("{gamma} is outside (0, 1]"));
                }
                Ok(())
            }
            Decay::Cosine { min_lr, .. } => {
                if !(min_lr.is_finite() && (0.0..=lr0).contains(&min_lr)) {
                    return bad("--lr-min", format!("{min_lr} is outside [0, --lr {lr0}]"));
                }
                Ok(())
            }
        }
    }

    /// As a checkpoint's optimizer metadata holds it.
    pub fn to_json(&self) -> Value {
        let mut v = match self.decay {
            Decay::Constant => json!({ "name": "constant" }),
            Decay::Step { every, gamma } => {
                json!({ "name": "step", "every_steps": every, "gamma": gamma as f64 })
            }
            Decay::Cosine { horizon, min_lr } => {
                json!({ "name": "cosine", "horizon_steps": horizon, "min_lr": min_lr as f64 })
            }
        };
        v["warmup_steps"] = json!(self.warmup);
        v
    }

    /// The inverse of [`Schedule::to_json`]; `None` when a field is missing or wrong.
    pub fn from_json(v: &Value) -> Option<Schedule> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32);
        let decay = match v.get("name")?.as_str()? {
            "constant" => Decay::Constant,
            "step" => Decay::Step {
                every: u("every_steps")?,
                gamma: f("gamma")?,
            },
            "cosine" => Decay::Cosine {
                horizon: u("horizon_steps")?,
                min_lr: f("min_lr")?,
            },
            _ => return None,
        };
        Some(Schedule {
            decay,
            warmup: u("warmup_steps").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn constant_is_constant() {
        let s = Schedule::CONSTANT;
        assert!((0..1000).all(|t| s.lr(0.1, t) == 0.1));
    }

    #[test]
    fn step_decays_every_n_steps() {
        let s = Schedule {
            decay: Decay::Step {
                every: 10,
                gamma: 0.5,
            },
            warmup: 0,
        };
        assert_eq!(s.lr(1.0, 0), 1.0);
        assert_eq!(s.lr(1.0, 9), 1.0);
        assert_eq!(s.lr(1.0, 10), 0.5);
        assert_eq!(s.lr(1.0, 29), 0.25);
        assert_eq!(s.lr(1.0, 30), 0.125);
    }

    #[test]
    fn cosine_runs_from_lr0_to_min() {
        let s = Schedule {
            decay: Decay::Cosine {
                horizon: 100,
                min_lr: 0.0,
            },
            warmup: 0,
        };
        assert_eq!(s.lr(1.0, 0), 1.0);
        assert!(close(s.lr(1.0, 50), 0.5));
        assert!(close(
            s.lr(1.0, 25),
            (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0
        ));
        assert!(close(s.lr(1.0, 100), 0.0));
        assert!(
            close(s.lr(1.0, 1000), 0.0),
            "stays at min after the horizon"
        );
        let floor = Schedule {
            decay: Decay::Cosine {
                horizon: 100,
                min_lr: 0.25,
            },
            warmup: 0,
        };
        assert!(close(floor.lr(1.0, 50), 0.625));
        assert!(close(floor.lr(1.0, 100), 0.25));
        // Monotone non-increasing.
        assert!((1..=100).all(|t| floor.lr(1.0, t) <= floor.lr(1.0, t - 1)));
    }

    #[test]
    fn warmup_is_linear_and_composes() {
        let w = Schedule {
            decay: Decay::Constant,
            warmup: 4,
        };
        let got: Vec<f64> = (0..6).map(|t| w.lr(1.0, t)).collect();
        assert_eq!(got, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let wc = Schedule {
            decay: Decay::Cosine {
                horizon: 14,
                min_lr: 0.0,
            },
            warmup: 4,
        };
        // The cosine starts where the warmup ends and spans the remaining 10 steps.
        assert_eq!(wc.lr(1.0, 1), 0.5);
        assert_eq!(wc.lr(1.0, 4), 1.0);
        assert!(close(wc.lr(1.0, 9), 0.5));
        assert!(close(wc.lr(1.0, 14), 0.0));
        let ws = Schedule {
            decay: Decay::Step {
                every: 2,
                gamma: 0.1,
            },
            warmup: 3,
        };
        assert!(close(ws.lr(1.0, 2), 0.1f32 as f64)); // one decay, warmup done (3/3)
        assert!(close(ws.lr(1.0, 1), 2.0 / 3.0));
    }

    #[test]
    fn json_round_trips_and_checks() {
        for s in [
            Schedule::CONSTANT,
            Schedule {
                decay: Decay::Step {
                    every: 375,
                    gamma: 0.1,
                },
                warmup: 0,
            },
            Schedule {
                decay: Decay::Cosine {
                    horizon: 3750,
                    min_lr: 1e-5,
                },
                warmup: 100,
            },
        ] {
            assert_eq!(Schedule::from_json(&s.to_json()), Some(s));
            assert!(s.check(1e-3).is_ok());
        }
        assert_eq!(Schedule::from_json(&json!({"name": "nope"})), None);
        let bad_gamma = Schedule {
            decay: Decay::Step {
                every: 1,
                gamma: 0.0,
            },
            warmup: 0,
        };
        assert!(bad_gamma
            .check(1e-3)
            .unwrap_err()
            .to_string()
            .contains("--lr-gamma"));
        let bad_min = Schedule {
            decay: Decay::Cosine {
                horizon: 1,
                min_lr: 1.0,
            },
            warmup: 0,
        };
        assert!(bad_min
            .check(1e-3)
            .unwrap_err()
            .to_string()
            .contains("--lr-min"));
    }
}
