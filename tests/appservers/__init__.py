"""multipool under real application servers: gunicorn (sync, gthread) and uvicorn."""
