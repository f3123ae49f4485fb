from ._loop import (
    Training as Training,
    accuracy as accuracy,
    cross_entropy as cross_entropy,
    evaluate as evaluate,
    load_checkpoint as load_checkpoint,
    train as train,
)
from ._model import (
    ByteEmbedding as ByteEmbedding,
    ClassReadout as ClassReadout,
    FlowModel as FlowModel,
    FlowOutput as FlowOutput,
    PatchEmbedding as PatchEmbedding,
    TokenReadout as TokenReadout,
    evaluations_per_step as evaluations_per_step,
    forward as forward,
)
from ._tasks import (
    bytes_data as bytes_data,
    bytes_task as bytes_task,
    digits_data as digits_data,
    digits_task as digits_task,
    flow_residual as flow_residual,
)
