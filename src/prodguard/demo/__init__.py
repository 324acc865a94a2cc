"""The main job (``prodguard demo``): a project's story played through prodguard on simulated
time — the real HTTP service, the registry, monitors, guard and reports — recorded as events and
summarised as an HTML page. The story itself belongs to the project (``demo.story``)."""
