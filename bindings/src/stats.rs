//! `rp.PoolStats`: an immutable snapshot of one pool's counters and timings.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// Field names in the order `to_dict()` and `repr()` show them.
macro_rules! stats_fields {
    ($m:ident) => {
        $m! {
            name: String, threads: usize, queue_capacity: usize,
            queued: u64, running: u64, submitted: u64, completed: u64, failed: u64,
            cancelled: u64, expired: u64, rejected: u64, max_queued: u64,
            wait_p50: f64, wait_p99: f64, run_p50: f64, run_p99: f64, utilization: f64,
            arrival_rate: f64, completion_rate: f64, run_mean: f64, run_quantiles: Vec<f64>,
            predicted_wait: f64
        }
    };
}

/// How a field shows in `repr()`: a distribution by its length only.
trait ShortRepr {
    fn short_repr(&self) -> String;
}

macro_rules! debug_repr {
    ($($ty:ty),*) => {
        $(impl ShortRepr for $ty {
            fn short_repr(&self) -> String {
                format!("{self:?}")
            }
        })*
    };
}

debug_repr!(String, usize, u64, f64);

impl ShortRepr for Vec<f64> {
    fn short_repr(&self) -> String {
        format!("[{} values]", self.len())
    }
}

macro_rules! define_stats {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// A consistent snapshot: `submitted == queued + running + completed +
        /// failed + cancelled + expired` always holds. Times are in seconds.
        #[pyclass(frozen, module = "raptors", name = "PoolStats")]
        pub struct PoolStats {
            $(#[pyo3(get)] pub $field: $ty,)*
        }

        impl From<raptors_runtime::PoolStats> for PoolStats {
            fn from(s: raptors_runtime::PoolStats) -> Self {
                PoolStats { $($field: s.$field,)* }
            }
        }

        #[pymethods]
        impl PoolStats {
            /// The field names, in the order of `to_dict()` and `repr()`:
            /// the one list the stub, the docs' tables and the metrics are
            /// checked against.
            #[classattr]
            #[pyo3(name = "FIELDS")]
            fn fields(py: Python<'_>) -> PyResult<Py<PyTuple>> {
                Ok(PyTuple::new(py, [$(stringify!($field)),*])?.unbind())
            }

            /// The same fields as a plain dict.
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let dict = PyDict::new(py);
                $(dict.set_item(stringify!($field), self.$field.clone())?;)*
                Ok(dict)
            }

            fn __repr__(&self) -> String {
                let mut fields = Vec::new();
                $(fields.push(format!("{}={}", stringify!($field), self.$field.short_repr()));)*
                format!("PoolStats({})", fields.join(", "))
            }
        }
    };
}

stats_fields!(define_stats);
