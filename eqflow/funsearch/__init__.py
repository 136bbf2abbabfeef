"""FunSearch on eqflow: an evolutionary search over Python functions, run as prioritized
``sample`` and ``evaluate`` tasks, with the programs database in PostgreSQL.

Modules: ``spec`` (problem specifications), ``code`` (parsing, trimming, normalising candidate
functions), ``samplers`` (the sampler interface and registry), ``mutation`` (the non-LLM sampler),
``sandbox`` (isolated evaluation of untrusted candidates), ``programs`` (islands, clusters, resets),
``engine`` (the ME loop), ``tasks`` (what pools run), ``outputs`` and ``cli``.
"""
