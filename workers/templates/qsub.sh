#!/bin/bash
#PBS -N ${job_name}
#PBS -l select=${nodes}:ncpus=${ppn}
#PBS -l walltime=${walltime}
#PBS -j oe
#PBS -o ${output}
${directives}
# eqflow worker pool, written by eqflow's PBS launcher.
set -eu
cd ${workdir}
${setup}
export EQFLOW_LAUNCHER=pbs
${env}
${command}
