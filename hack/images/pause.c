/* The pod sandbox's pause process: holds the pod's namespaces open and does nothing
 * else until SIGTERM or SIGINT. Built static by hack/images.sh into an image of its own
 * (no shell, no libc to ship). It reaps no children: nothing shares its PID namespace. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t should_stop = 0;

static void stop(int signal_number) {
  (void)signal_number;
  should_stop = 1;
}

int main(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = stop;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGTERM, &action, NULL) != 0 || sigaction(SIGINT, &action, NULL) != 0) {
    return 1;
  }
  while (!should_stop) {
    pause();
  }
  return 0;
}
