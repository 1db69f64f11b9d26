//! A diffusers `scheduler/scheduler_config.json` for `EDMEulerScheduler`: the keys that change
//! the result, checked, with diffusers' defaults for absent ones.

use crate::PipelineError;
use serde_json::Value;
use std::path::Path;

/// How the σ grid is spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigmaSchedule {
    /// Karras et al.: `(σmax^(1/ρ) + r·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ` over a ramp r in [0, 1].
    Karras,
    /// Log-linear from σmax down to σmin.
    Exponential,
}

/// The σ appended after the last step: 0 (a last step that lands on the clean sample) or
/// `sigma_min` (the Cosmos pipelines' choice: the last step has dt = 0, so the output is the
/// sample at σ_min).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EdmSchedulerConfig {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub sigma_data: f64,
    pub rho: f64,
    pub sigma_schedule: SigmaSchedule,
    pub final_sigmas: FinalSigmas,
}

impl Default for EdmSchedulerConfig {
    /// diffusers' `EDMEulerScheduler()` defaults.
    fn default() -> Self {
        EdmSchedulerConfig {
            sigma_min: 0.002,
            sigma_max: 80.0,
            sigma_data: 0.5,
            rho: 7.0,
            sigma_schedule: SigmaSchedule::Karras,
            final_sigmas: FinalSigmas::Zero,
        }
    }
}

impl EdmSchedulerConfig {
    /// Reads a `scheduler_config.json` (or the folder holding it).
    pub fn read(path: &Path) -> Result<EdmSchedulerConfig, PipelineError> {
        let file = if path.is_dir() { path.join("scheduler_config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| PipelineError::Config {
            path: file.display().to_string(),
            reason: format!("cannot read it: {e}"),
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| PipelineError::Config {
            path: file.display().to_string(),
            reason: format!("not valid JSON: {e}"),
        })?;
        EdmSchedulerConfig::from_json(&json)
            .map_err(|reason| PipelineError::Config { path: file.display().to_string(), reason })
    }

    /// From the parsed JSON object; the error says which key is wrong and why.
    pub fn from_json(json: &Value) -> Result<EdmSchedulerConfig, String> {
        match json.get("_class_name").and_then(Value::as_str) {
            None | Some("EDMEulerScheduler") => {}
            Some(other) => return Err(format!("scheduler `{other}` is not supported (only EDMEulerScheduler)")),
        }
        let d = EdmSchedulerConfig::default();
        let number = |key: &str, default: f64| -> Result<f64, String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| format!("`{key}` must be a positive number, got {v}")),
            }
        };
        let text = |key: &str, default: &'static str| -> Result<String, String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(format!("`{key}` must be a string, got {v}")),
            }
        };
        let sigma_schedule = match text("sigma_schedule", "karras")?.as_str() {
            "karras" => SigmaSchedule::Karras,
            "exponential" => SigmaSchedule::Exponential,
            other => return Err(format!("`sigma_schedule` {other:?} is not one of \"karras\", \"exponential\"")),
        };
        let final_sigmas = match text("final_sigmas_type", "zero")?.as_str() {
            "zero" => FinalSigmas::Zero,
            "sigma_min" => FinalSigmas::SigmaMin,
            other => return Err(format!("`final_sigmas_type` {other:?} is not one of \"zero\", \"sigma_min\"")),
        };
        match text("prediction_type", "epsilon")?.as_str() {
            "epsilon" => {}
            other => {
                return Err(format!("`prediction_type` {other:?} is not supported (the Cosmos models use \"epsilon\")"))
            }
        }
        let c = EdmSchedulerConfig {
            sigma_min: number("sigma_min", d.sigma_min)?,
            sigma_max: number("sigma_max", d.sigma_max)?,
            sigma_data: number("sigma_data", d.sigma_data)?,
            rho: number("rho", d.rho)?,
            sigma_schedule,
            final_sigmas,
        };
        if c.sigma_min >= c.sigma_max {
            return Err(format!("`sigma_min` ({}) must be below `sigma_max` ({})", c.sigma_min, c.sigma_max));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cosmos_config_reads_and_bad_keys_are_named() {
        let cosmos = json!({
            "_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80, "sigma_data": 0.5,
            "sigma_schedule": "karras", "num_train_timesteps": 1000, "prediction_type": "epsilon",
            "rho": 7.0, "final_sigmas_type": "sigma_min"
        });
        let c = EdmSchedulerConfig::from_json(&cosmos).unwrap();
        assert_eq!(c.final_sigmas, FinalSigmas::SigmaMin);
        assert_eq!((c.sigma_min, c.sigma_max, c.rho), (0.002, 80.0, 7.0));
        assert_eq!(EdmSchedulerConfig::from_json(&json!({})).unwrap(), EdmSchedulerConfig::default());
        for (bad, key) in [
            (json!({"_class_name": "DDIMScheduler"}), "DDIMScheduler"),
            (json!({"sigma_max": -1}), "sigma_max"),
            (json!({"final_sigmas_type": "last"}), "final_sigmas_type"),
            (json!({"prediction_type": "v_prediction"}), "prediction_type"),
            (json!({"sigma_min": 90}), "sigma_min"),
        ] {
            let err = EdmSchedulerConfig::from_json(&bad).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }
}
