"""A live dashboard: experiments, tasks by status over time, throughput, workflow progress,
failures, pools and scaling decisions, pushed to the browser as server-sent events.

Served by the EMEWS service at ``/dashboard`` (bearer token or login cookie) and on its own by
``eqflow dashboard``. Every asset (HTML, CSS, vanilla JS drawing SVG) ships in the package.
Workflows plug in a progress panel in ``static/panels.js`` (chosen by the keys of their
``progress`` events' data).

The routes: ``eqflow.dashboard.routes.make_router``.
"""
