//! `timeout=` arguments: the one parser every API that takes one goes through
//! (`submit`, `Job.result`/`exception`/`_wait`, `Pool.join`, `Pool.map`).
//!
//! `None` and `float("inf")` mean no limit; any other number of seconds, at
//! least zero, is a limit (zero: do not wait). Negative values and NaN are a
//! `ValueError`, anything that is not a real number (including `bool`) a
//! `TypeError`; both messages name the argument. Limits past 10^9 s (31
//! years) are treated as that, so no deadline overflows an `Instant`.

use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

/// The longest limit kept as a deadline; longer ones are no limit in practice.
const LONGEST_SECONDS: f64 = 1e9;

/// A parsed `timeout=`: `None` is no limit.
#[derive(Clone, Copy, Debug)]
pub struct Timeout(Option<Duration>);

impl Timeout {
    pub const NONE: Timeout = Timeout(None);

    /// Parses `value` given as the argument named `name`.
    pub fn parse(name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Timeout> {
        let Some(value) = value.filter(|v| !v.is_none()) else {
            return Ok(Timeout::NONE);
        };
        let type_error = || {
            let type_name = value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!(
                "{name} must be a number of seconds or None, not {type_name}"
            ))
        };
        if value.is_instance_of::<PyBool>() {
            return Err(type_error());
        }
        let seconds: f64 = value.extract().map_err(|_| type_error())?;
        if seconds.is_nan() || seconds < 0.0 {
            return Err(PyValueError::new_err(format!(
                "{name} must be a non-negative number of seconds, got {seconds}"
            )));
        }
        if seconds.is_infinite() {
            return Ok(Timeout::NONE);
        }
        Ok(Timeout(Some(Duration::from_secs_f64(
            seconds.min(LONGEST_SECONDS),
        ))))
    }

    /// The deadline this limit sets, counted from now.
    pub fn deadline(self) -> Option<Instant> {
        self.0.map(|limit| Instant::now() + limit)
    }

    /// The limit in seconds, for messages (`None`: no limit).
    pub fn seconds(self) -> Option<f64> {
        self.0.map(|limit| limit.as_secs_f64())
    }
}

/// Checks a `timeout=` argument the Python side handles itself (`Pool.map`):
/// returns it as seconds, or `None` for no limit; raises as [`Timeout::parse`].
#[pyfunction]
#[pyo3(signature = (value, name="timeout"))]
pub fn _timeout_seconds(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<f64>> {
    Ok(Timeout::parse(name, value)?.seconds())
}
