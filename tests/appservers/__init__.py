"""multipool under real application servers: gunicorn, uvicorn, Celery."""
