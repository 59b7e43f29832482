/*
 * tunbridge: a userspace link between two TUN devices with one-way delay,
 * a bandwidth cap, a drop-tail queue and random loss, per direction.
 *
 *   tunbridge TUN_A TUN_B ONE_WAY_DELAY_US RATE_BITS_PER_S LOSS
 *
 * RATE 0 means no cap. Creates both devices (IFF_TUN | IFF_NO_PI), prints
 * "ready" once they exist, then a JSON line of counters every 250 ms and on
 * SIGUSR1; "qAB" is the histogram of the queueing delay packets A → B met
 * (time waiting for the serializer, 1 ms buckets, the last one open-ended).
 * A number written as a line on stdin is a request: the counters
 * printed in answer carry it as "req", so the caller knows they are at least
 * as new as its request. Exits on SIGTERM, SIGINT or when stdin closes; the
 * devices vanish with it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define SLOT_BYTES 2048
#define MAX_SLOTS 65536
#define BURST 64
#define QUEUE_BUCKETS 200

struct slot {
  uint64_t due_ns;
  uint32_t len;
  uint8_t data[SLOT_BYTES];
};

struct direction {
  const char *name;
  int in_fd, out_fd;
  uint64_t delay_ns;
  double rate_bps;
  double loss;
  uint32_t limit; /* packets held (in the queue or on the wire) before drop tail */
  struct slot *ring;
  uint32_t head, count;
  uint64_t wire_free_ns; /* when the serializer finishes the last accepted packet */
  uint64_t rng;
  _Atomic uint64_t bytes, packets, drops, lost;
  _Atomic uint64_t queue_ms[QUEUE_BUCKETS]; /* packets by queueing delay at arrival */
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double next_uniform(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return (double)(x >> 11) / 9007199254740992.0;
}

static int open_tun(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "tunbridge: open /dev/net/tun: %s\n", strerror(errno));
    exit(2);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (strlen(name) >= IFNAMSIZ) {
    fprintf(stderr, "tunbridge: device name too long (max %d): %s\n", IFNAMSIZ - 1, name);
    exit(2);
  }
  strcpy(ifr.ifr_name, name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    fprintf(stderr, "tunbridge: TUNSETIFF %s: %s\n", name, strerror(errno));
    exit(2);
  }
  return fd;
}

/* Takes every packet waiting on the input; stamps each with its delivery time. */
static void take_arrivals(struct direction *d) {
  for (int i = 0; i < BURST; i++) {
    uint32_t tail = (d->head + d->count) % d->limit;
    struct slot *s = &d->ring[tail];
    ssize_t n = read(d->in_fd, s->data, SLOT_BYTES);
    if (n <= 0) return;
    uint64_t t = now_ns();
    if (d->count + 1 >= d->limit) {
      atomic_fetch_add_explicit(&d->drops, 1, memory_order_relaxed);
      continue;
    }
    if (d->loss > 0 && next_uniform(&d->rng) < d->loss) {
      atomic_fetch_add_explicit(&d->lost, 1, memory_order_relaxed);
      continue;
    }
    uint64_t start = d->wire_free_ns > t ? d->wire_free_ns : t;
    uint64_t waited_ms = (start - t) / 1000000ull;
    atomic_fetch_add_explicit(&d->queue_ms[waited_ms < QUEUE_BUCKETS ? waited_ms : QUEUE_BUCKETS - 1], 1,
                              memory_order_relaxed);
    uint64_t tx = d->rate_bps > 0 ? (uint64_t)((double)n * 8e9 / d->rate_bps) : 0;
    d->wire_free_ns = start + tx;
    s->len = (uint32_t)n;
    s->due_ns = d->wire_free_ns + d->delay_ns;
    d->count++;
  }
}

static void release_due(struct direction *d, uint64_t t) {
  while (d->count > 0) {
    struct slot *s = &d->ring[d->head];
    if (s->due_ns > t) return;
    /* A full device queue on the far side is a drop, as on a real wire. */
    if (write(d->out_fd, s->data, s->len) == (ssize_t)s->len) {
      atomic_fetch_add_explicit(&d->bytes, s->len, memory_order_relaxed);
      atomic_fetch_add_explicit(&d->packets, 1, memory_order_relaxed);
    } else {
      atomic_fetch_add_explicit(&d->drops, 1, memory_order_relaxed);
    }
    d->head = (d->head + 1) % d->limit;
    d->count--;
  }
}

static void *forward(void *arg) {
  struct direction *d = arg;
  /* The default 50 us slack would add to every packet's delay. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  struct pollfd pfd = {.fd = d->in_fd, .events = POLLIN};
  for (;;) {
    uint64_t t = now_ns();
    release_due(d, t);
    struct timespec timeout, *tp = NULL;
    if (d->count > 0) {
      uint64_t wait = d->ring[d->head].due_ns - t;
      timeout.tv_sec = (time_t)(wait / 1000000000ull);
      timeout.tv_nsec = (long)(wait % 1000000000ull);
      tp = &timeout;
    }
    int r = ppoll(&pfd, 1, tp, NULL);
    if (r < 0 && errno != EINTR) {
      fprintf(stderr, "tunbridge: poll %s: %s\n", d->name, strerror(errno));
      exit(3);
    }
    if (r > 0 && (pfd.revents & POLLIN)) take_arrivals(d);
  }
  return NULL;
}

static void print_counters(struct direction *ab, struct direction *ba, long req) {
  printf("{\"req\":%ld,\"bytesAB\":%llu,\"packetsAB\":%llu,\"dropsAB\":%llu,\"lostAB\":%llu,"
         "\"bytesBA\":%llu,\"packetsBA\":%llu,\"dropsBA\":%llu,\"lostBA\":%llu,\"qAB\":[",
         req, (unsigned long long)atomic_load(&ab->bytes), (unsigned long long)atomic_load(&ab->packets),
         (unsigned long long)atomic_load(&ab->drops), (unsigned long long)atomic_load(&ab->lost),
         (unsigned long long)atomic_load(&ba->bytes), (unsigned long long)atomic_load(&ba->packets),
         (unsigned long long)atomic_load(&ba->drops), (unsigned long long)atomic_load(&ba->lost));
  for (int i = 0; i < QUEUE_BUCKETS; i++)
    printf("%s%llu", i ? "," : "", (unsigned long long)atomic_load(&ab->queue_ms[i]));
  printf("]}\n");
  fflush(stdout);
}

static double parse_number(const char *what, const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (*s == '\0' || *end != '\0' || v < 0) {
    fprintf(stderr, "tunbridge: %s must be a number >= 0 (got '%s')\n", what, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: tunbridge TUN_A TUN_B ONE_WAY_DELAY_US RATE_BITS_PER_S LOSS\n");
    return 2;
  }
  double delay_us = parse_number("delay", argv[3]);
  double rate = parse_number("rate", argv[4]);
  double loss = parse_number("loss", argv[5]);
  if (loss >= 1) {
    fprintf(stderr, "tunbridge: loss must be in [0, 1) (got %s)\n", argv[5]);
    return 2;
  }
  /* Room for the packets on the wire (one BDP) plus a router buffer of about another BDP. */
  double bdp_packets = rate > 0 ? rate / 8 * delay_us / 1e6 / 1500 : 10000;
  double limit = 2 * bdp_packets + 100;
  if (limit > MAX_SLOTS) limit = MAX_SLOTS;

  int fd_a = open_tun(argv[1]);
  int fd_b = open_tun(argv[2]);
  struct direction dirs[2] = {
      {.name = "a->b", .in_fd = fd_a, .out_fd = fd_b},
      {.name = "b->a", .in_fd = fd_b, .out_fd = fd_a},
  };
  for (int i = 0; i < 2; i++) {
    struct direction *d = &dirs[i];
    d->delay_ns = (uint64_t)(delay_us * 1000);
    d->rate_bps = rate;
    d->loss = loss;
    d->limit = (uint32_t)limit + 1;
    d->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() ^ ((uint64_t)i << 32);
    /* calloc'd pages are touched only as the queue grows into them. */
    d->ring = calloc(d->limit, sizeof(struct slot));
    if (!d->ring) {
      fprintf(stderr, "tunbridge: out of memory for %u slots\n", d->limit);
      return 2;
    }
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

  pthread_t threads[2];
  for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, forward, &dirs[i]);
  printf("ready\n");
  fflush(stdout);

  struct pollfd pfds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  char buf[256];
  long req = -1; /* the highest request read so far */
  for (;;) {
    int r = poll(pfds, 2, 250);
    if (r < 0 && errno != EINTR) break;
    if (pfds[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo != SIGUSR1 && si.ssi_signo != SIGPIPE) break;
    }
    if (pfds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(0, buf, sizeof buf - 1);
      if (n <= 0) break;
      buf[n] = '\0';
      /* Requests arrive as increasing numbers, one a line; several may come in one read. */
      for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        long asked = strtol(line, NULL, 10);
        if (asked > req) req = asked;
      }
    }
    print_counters(&dirs[0], &dirs[1], req);
  }
  print_counters(&dirs[0], &dirs[1], req);
  return 0;
}
