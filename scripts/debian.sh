# Sourced by setup.sh and docker-engine.sh: the one way this project installs Debian packages.
# debian_install PKG...: installs them quietly as root; anyone else gets the command to run.
debian_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: $*; install them (sudo apt-get install $*) and re-run" >&2
    exit 1
  fi
  echo "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
