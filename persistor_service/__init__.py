"""persistor-service: drains the processed-event stream into PostgreSQL.

It is the single writer of the ``events`` log: it keeps the stream's order,
fences records of superseded leaders (their input events go back to the
collector queue), commits barriers and announces them with NOTIFY, and prunes
events no kept snapshot needs.
"""
