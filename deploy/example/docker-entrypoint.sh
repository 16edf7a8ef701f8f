#!/bin/sh
# Entry point of the example image.
#   web      check the configuration (multipool's checks, --deploy), then run gunicorn
#   migrate  apply migrations to every primary alias (default, legacy)
#   check    the Django and multipool system checks, with the deployment checks
#   *        run the command as given (e.g. "python manage.py shell")
set -eu
cd /app

case "${1:-web}" in
  web)
    # Fail fast on a configuration mistake (missing CA file, expired certificate...).
    python manage.py check --deploy --tag multipool --fail-level ERROR
    exec gunicorn --config gunicorn.conf.py exampleproject.wsgi
    ;;
  migrate)
    python manage.py migrate --noinput --database default
    exec python manage.py migrate --noinput --database legacy
    ;;
  check)
    exec python manage.py check --deploy --fail-level ERROR
    ;;
  *)
    exec "$@"
    ;;
esac
