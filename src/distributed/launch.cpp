#include <peft/distributed.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include <c10/util/Exception.h>

#include <peft/error.h>

namespace peft::distributed {
namespace {

// The children, for the signal handler (only async-signal-safe calls there).
constexpr int kMaxProcesses = 1024;
pid_t g_children[kMaxProcesses];
std::atomic<int> g_count{0};

void forward_signal(int signal) {
  for (int i = 0; i < g_count.load(); ++i) {
    if (g_children[i] > 0) ::kill(g_children[i], signal);
  }
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("launch: cannot create a socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw Error(std::string("launch: cannot find a free port: ") + std::strerror(errno));
  return ntohs(address.sin_port);
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

int launch(int nproc, const std::vector<std::string>& command, int master_port, const std::string& master_addr) {
  if (nproc < 1 || nproc > kMaxProcesses) {
    throw ConfigError("launch: the number of processes must be in [1, " + std::to_string(kMaxProcesses) + "], got " +
                      std::to_string(nproc) + ".");
  }
  if (command.empty()) throw ConfigError("launch: no command to run (peft-cpp launch -n N -- PROGRAM ARGS...).");
  if (g_count.load() != 0) throw Error("launch: already running a launch in this process.");
  const int port = master_port > 0 ? master_port : free_port();
  // As torchrun: N processes each starting a thread pool per core (LibTorch's and OpenBLAS's, which
  // torch::set_num_threads does not reach) oversubscribe the cores; on 2 cores that made 2 ranks 2x slower than 1.
  const bool one_thread_each = nproc > 1 && !std::getenv("OMP_NUM_THREADS");
  if (one_thread_each) {
    TORCH_WARN("launch: OMP_NUM_THREADS is not set; each of the ", nproc, " processes gets OMP_NUM_THREADS=1 (as with "
               "torchrun) so that their thread pools do not oversubscribe the cores. Set it to tune.");
  }

  std::vector<char*> argv;
  for (const std::string& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  struct sigaction action {}, old_int{}, old_term{};
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, &old_int);
  ::sigaction(SIGTERM, &action, &old_term);
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGKILL);
      throw Error(std::string("launch: fork failed: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      const std::string r = std::to_string(rank), n = std::to_string(nproc), p = std::to_string(port);
      ::setenv("RANK", r.c_str(), 1);
      ::setenv("LOCAL_RANK", r.c_str(), 1);
      ::setenv("WORLD_SIZE", n.c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
      ::setenv("MASTER_ADDR", master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", p.c_str(), 1);
      if (one_thread_each) ::setenv("OMP_NUM_THREADS", "1", 1);
      ::execvp(argv[0], argv.data());
      std::cerr << "peft-cpp launch: cannot run " << command.front() << ": " << std::strerror(errno) << "\n";
      ::_exit(127);
    }
    g_children[rank] = pid;
    g_count.store(rank + 1);
  }

  int result = 0, running = nproc;
  auto stop_others = [&] {
    forward_signal(SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (running > 0 && std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid > 0) {
        for (int i = 0; i < nproc; ++i) if (g_children[i] == pid) g_children[i] = 0;
        --running;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    forward_signal(SIGKILL);
    while (running > 0) {
      int status = 0;
      if (::waitpid(-1, &status, 0) > 0) --running;
      else if (errno != EINTR) break;
    }
  };
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    --running;
    int rank = -1;
    for (int i = 0; i < nproc; ++i) {
      if (g_children[i] == pid) {
        rank = i;
        g_children[i] = 0;
      }
    }
    if (exit_code(status) != 0) {
      result = exit_code(status);
      std::cerr << "peft-cpp launch: rank " << rank << " (pid " << pid << ") "
                << (WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                      : "was killed by signal " + std::to_string(WTERMSIG(status)))
                << "; stopping the other ranks\n";
      stop_others();
    }
  }
  g_count.store(0);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return result;
}

}  // namespace peft::distributed
