"""The job: config, CLI, the run (scan → fit → publish), refresh, lock and logs.

The job may import every other stage; nothing imports the job.
"""
