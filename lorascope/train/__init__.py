"""Training with LoRA (torch): the loop (``loop``), optimizers and their parameter groups
(``optim``), learning-rate schedules, mixed precision (``amp``), data parallelism
(``distributed``), evaluation and the model report. It never imports the Recorder: the loop
calls whatever implements ``loop.StepHooks``."""
