//! `rp.CancelToken`: one token shared by many jobs.

use pyo3::prelude::*;

/// Cancelling the token cancels every queued job submitted with it; running
/// kernels check it between chunks and stop early.
#[pyclass(frozen, module = "raptors", name = "CancelToken")]
pub struct CancelToken {
    token: raptors_runtime::CancelToken,
}

impl CancelToken {
    pub fn runtime_token(&self) -> &raptors_runtime::CancelToken {
        &self.token
    }
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken {
            token: raptors_runtime::CancelToken::new(),
        }
    }

    /// Cancels the token and every queued job submitted with it. Idempotent.
    fn cancel(&self, py: Python<'_>) {
        let token = &self.token;
        py.allow_threads(|| token.cancel());
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    fn __repr__(&self) -> String {
        format!("<CancelToken cancelled={}>", self.token.is_cancelled())
    }
}
