//! A call is checked once: `check` returns a plan, `Plan::execute` runs it
//! without validating again and refuses operands it was not checked for.

mod common;

use common::*;
use raptors_kernels::*;

#[test]
fn a_plan_runs_as_the_one_step_call_does() {
    for dt in DTYPES {
        let a = Case::new(dt, &values(12, 1, true), &[3, 4], Layout::C);
        let b = Case::new(dt, &values(4, 2, true), &[4], Layout::C);
        for (op, params) in [
            (Op::Dot, Params::default()),
            (Op::Matmul, Params::default()),
            (Op::Add, Params::default()),
            (Op::Divide, Params::default()),
        ] {
            let operands = [a.op(), b.op()];
            let plan = check(op, &operands, &params).unwrap();
            assert_eq!(plan.op(), op);
            let planned = plan.execute(&operands, &Serial).unwrap();
            assert_eq!(
                planned,
                run(op, &operands, &params, &Serial).unwrap(),
                "{op:?} {dt:?}"
            );
            // A plan can run again (a job retried, a direct call repeated).
            assert_eq!(plan.execute(&operands, &Serial).unwrap(), planned);
        }
        let sum = Params {
            axis: Some(-1),
            ..Params::default()
        };
        let plan = check(Op::Sum, &[a.op()], &sum).unwrap();
        assert_eq!(
            plan.execute(&[a.op()], &Serial).unwrap(),
            run1(Op::Sum, a.op(), sum).unwrap()
        );
    }
}

#[test]
fn a_plan_refuses_operands_it_was_not_checked_for() {
    let a = Case::new(DType::Float64, &values(12, 1, false), &[3, 4], Layout::C);
    let b = Case::new(DType::Float64, &values(4, 2, false), &[4], Layout::C);
    let longer = Case::new(DType::Float64, &values(5, 3, false), &[5], Layout::C);
    let narrower = Case::new(DType::Float32, &values(4, 4, false), &[4], Layout::C);
    let plan = check(Op::Dot, &[a.op(), b.op()], &Params::default()).unwrap();
    for other in [
        vec![a.op(), longer.op()],
        vec![a.op(), narrower.op()],
        vec![a.op(), Operand::Float(2.0)],
        vec![a.op()],
    ] {
        match plan.execute(&other, &Serial) {
            Err(KernelError::Type(msg)) => assert!(msg.contains("dot()"), "{msg}"),
            got => panic!("expected a TypeError, got {got:?}"),
        }
    }
}
