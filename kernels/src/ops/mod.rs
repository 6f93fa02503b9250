//! One module per operation family; each is generic over the element type
//! and monomorphised through `with_dtype!`.

pub(crate) mod cosine;
pub(crate) mod cosine_topk;
pub(crate) mod dot;
pub(crate) mod elementwise;
pub(crate) mod operand;
pub(crate) mod reduce;
pub(crate) mod topk;
