//! What a job runs: a Raptors kernel (GIL released for the whole run) or a
//! Python callable (GIL held only while Python code runs), and the values
//! and errors they end with.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use raptors_kernels::KernelError;
use raptors_runtime::{JobContext, JobHandle, JobStop};

use crate::convert;
use crate::gil;
use crate::kernel::PreparedKernel;

/// A job's successful result, still in Rust form where it came from a kernel:
/// it becomes a Python object on the thread that first asks for it.
pub enum JobValue {
    Python(PyObject),
    Kernel(convert::KernelOutput),
}

impl JobValue {
    pub fn into_py_result(self, py: Python<'_>) -> PyResult<PyObject> {
        match self {
            JobValue::Python(value) => Ok(value),
            JobValue::Kernel(output) => output.into_py(py),
        }
    }
}

/// A job's failure: the exception its callable raised, or a kernel's error.
pub enum JobError {
    Python(PyErr),
    Kernel(KernelError),
}

pub type RuntimeHandle = JobHandle<JobValue, JobError>;
pub type JobResult = Result<JobValue, JobStop<JobError>>;

/// Runs a Python callable on the worker. The callable, its arguments and its
/// result are dropped with the GIL held.
pub fn python_call(
    func: PyObject,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> impl FnOnce(&JobContext<'_>) -> JobResult + Send + 'static {
    move |_cx| {
        gil::with_gil_on_worker(|py| {
            let outcome = func.call(py, args.bind(py), kwargs.as_ref().map(|k| k.bind(py)));
            drop((func, args, kwargs));
            match outcome {
                Ok(value) => Ok(JobValue::Python(value)),
                Err(err) => Err(JobStop::Failed(JobError::Python(err))),
            }
        })
    }
}

/// Runs a prepared kernel on the worker without the GIL. The kernel may split
/// across the pool's own threads and stops early when its token is cancelled.
pub fn kernel_call(
    prepared: PreparedKernel,
) -> impl FnOnce(&JobContext<'_>) -> JobResult + Send + 'static {
    move |cx| {
        let exec = PoolExec(cx);
        match prepared.run(&exec) {
            Ok(output) => Ok(JobValue::Kernel(output)),
            Err(KernelError::Cancelled) => Err(JobStop::Cancelled),
            Err(err) => Err(JobStop::Failed(JobError::Kernel(err))),
        }
    }
}

/// The runtime's view of a running job, as the kernels crate wants it.
struct PoolExec<'a, 'cx>(&'a JobContext<'cx>);

impl raptors_kernels::Exec for PoolExec<'_, '_> {
    fn max_threads(&self) -> usize {
        self.0.pool_threads()
    }

    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    fn wake_helpers(&self) {
        self.0.wake_helpers();
    }
}
