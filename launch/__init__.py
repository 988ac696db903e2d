"""The entry points and the infrastructure only they use: the top of the project but for bench/.

fit.py, submit.py, evaluate.py, make_shards.py, sample.py and export.py are what a user runs (sample.py and
export.py find a method's inference code from the class a checkpoint names); cli.py gives them one way to report a usage
error (one line per problem, exit code 2); config.py merges and checks configs and builds their `target` + `params`
objects; trainer.py builds the Lightning Trainer (strategies, loggers, checkpointing); runs.py keeps run
directories, checkpoints and resume; slurm.py writes sbatch scripts; benchmark_run.py is the resumable loop of
`evaluate.py run`. Nothing below launch/ imports it, and nothing here knows a particular method: methods are
built from configs.
"""
