#!/bin/bash
#SBATCH --job-name=${job_name}
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=${ppn}
#SBATCH --time=${walltime}
#SBATCH --output=${output}
${directives}
# eqflow worker pool, written by eqflow's SLURM launcher.
set -eu
cd ${workdir}
${setup}
export EQFLOW_LAUNCHER=slurm
${env}
srun --ntasks=${nodes} --ntasks-per-node=1 ${command}
