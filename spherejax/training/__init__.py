"""Training attention flows on data: a model of embedding -> attention flow ->
readout (`FlowModel`), trained with Optax on mini-batches (`train`) with the kinetic
action and a Hutchinson estimate of the Jacobian's Frobenius norm as regularisers,
integrated in the same solve as the tokens (`forward`); the solver's field
evaluations counted; resumable checkpoints; two small tasks on data available
offline (`digits_task`, `bytes_task`) and the Euler–Lagrange residual of a trained
flow (`flow_residual`)."""

from .._training import (
    ByteEmbedding as ByteEmbedding,
    ClassReadout as ClassReadout,
    FlowModel as FlowModel,
    FlowOutput as FlowOutput,
    PatchEmbedding as PatchEmbedding,
    TokenReadout as TokenReadout,
    Training as Training,
    accuracy as accuracy,
    bytes_data as bytes_data,
    bytes_task as bytes_task,
    cross_entropy as cross_entropy,
    digits_data as digits_data,
    digits_task as digits_task,
    evaluate as evaluate,
    evaluations_per_step as evaluations_per_step,
    flow_residual as flow_residual,
    forward as forward,
    load_checkpoint as load_checkpoint,
    train as train,
)
