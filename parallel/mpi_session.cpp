#include "parallel/mpi_session.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>

#include "runtime/base/errors.h"

namespace mla {

namespace {
int world_rank_or_unknown() {
  int initialized = 0, finalized = 0, rank = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// MPI counts are int: a message past 2^31 elements goes in pieces.
constexpr int64_t kMaxMpiCount = std::numeric_limits<int>::max() / 2;
// An all-reduce goes in pieces of at most 2 GiB: some of Open MPI's transports count a message's
// bytes as int (mla_allreduce_bench measures up to this size).
constexpr int64_t kMaxMpiFloats = (int64_t{1} << 31) / sizeof(float);
}  // namespace

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw MpiError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + " on rank " +
                 std::to_string(world_rank_or_unknown()) + " (" + this_host_name() + "): " + text);
}

MpiSession::MpiSession(int* argc, char*** argv) : host_(this_host_name()) {
  MPI_CHECK(MPI_Init(argc, argv));
  // Errors come back as codes for MPI_CHECK to report, instead of MPI aborting silently.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
  MPI_Comm node_comm;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_comm));
  MPI_CHECK(MPI_Comm_rank(node_comm, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node_comm, &local_size_));
  MPI_CHECK(MPI_Comm_free(&node_comm));
}

MpiSession::~MpiSession() { MPI_Finalize(); }

std::string MpiSession::label() const {
  return "[rank " + std::to_string(rank_) + "/" + std::to_string(world_) + " " + host_ + "]";
}

std::vector<std::string> MpiSession::all_gather(const std::string& text) const {
  const CollectiveScope scope(watchdog_, "all-gather");
  int length = static_cast<int>(std::min<size_t>(text.size(), static_cast<size_t>(kMaxMpiCount)));
  std::vector<int> lengths(static_cast<size_t>(world_));
  MPI_CHECK(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<int> offsets(static_cast<size_t>(world_), 0);
  int64_t total = 0;
  for (int r = 0; r < world_; ++r) {
    offsets[r] = static_cast<int>(total);
    total += lengths[r];
  }
  if (total > kMaxMpiCount) throw MpiError("all_gather: " + std::to_string(total) + " bytes is too much text");
  std::string gathered(static_cast<size_t>(total), '\0');
  MPI_CHECK(MPI_Allgatherv(text.data(), length, MPI_CHAR, gathered.data(), lengths.data(), offsets.data(), MPI_CHAR,
                           MPI_COMM_WORLD));
  std::vector<std::string> texts;
  for (int r = 0; r < world_; ++r) texts.push_back(gathered.substr(static_cast<size_t>(offsets[r]), lengths[r]));
  return texts;
}

bool MpiSession::all_ok(bool ok, const std::string& message, std::string* failure) const {
  int local_ok = ok ? 1 : 0, every_ok = 0;
  {
    const CollectiveScope scope(watchdog_, "agreement");
    MPI_CHECK(MPI_Allreduce(&local_ok, &every_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  }
  if (every_ok) return true;
  const std::vector<std::string> messages = all_gather(ok ? std::string() : message);
  const std::vector<std::string> hosts = all_gather(host_);
  failure->clear();
  std::vector<bool> reported(messages.size(), false);
  for (size_t r = 0; r < messages.size(); ++r) {
    if (messages[r].empty() || reported[r]) continue;
    std::string ranks;
    for (size_t other = r; other < messages.size(); ++other) {
      if (messages[other] != messages[r]) continue;
      reported[other] = true;
      ranks += (ranks.empty() ? "" : ", ") + std::to_string(other) + " (" + hosts[other] + ")";
    }
    const bool every_rank = ranks.find(',') != std::string::npos &&
                            std::count(reported.begin(), reported.end(), true) == static_cast<long>(messages.size());
    if (!failure->empty()) *failure += "; ";
    *failure += (world_ == 1 ? "" : every_rank ? "every rank: " : "rank " + ranks + ": ") + messages[r];
  }
  return false;
}

MpiCommunicator::MpiCommunicator(const MpiSession& session)
    : session_(session), rank_(session.rank()), world_(session.world()) {}

MpiCommunicator::MpiCommunicator(const MpiSession& session, int group_size) : session_(session) {
  if (group_size < 1 || session.world() % group_size != 0) {
    throw std::invalid_argument("MpiCommunicator: groups of " + std::to_string(group_size) + " ranks do not divide " +
                                "a world of " + std::to_string(session.world()));
  }
  const CollectiveScope scope(session.watchdog(), "forming the rank groups");
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, session.rank() / group_size, session.rank(), &comm_));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &world_));
}

MpiCommunicator::~MpiCommunicator() {
  if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);  // no throw from a destructor
}

void MpiCommunicator::allreduce_sum(float* values, int64_t count) {
  if (world_ == 1) return;
  const CollectiveScope scope(session_.watchdog(), "all-reduce");
  for (int64_t begin = 0; begin < count; begin += kMaxMpiFloats) {
    const int piece = static_cast<int>(std::min(kMaxMpiFloats, count - begin));
    float* chunk = values + begin;
    if (rank_ == 0) {
      MPI_CHECK(MPI_Reduce(MPI_IN_PLACE, chunk, piece, MPI_FLOAT, MPI_SUM, 0, comm_));
    } else {
      MPI_CHECK(MPI_Reduce(chunk, nullptr, piece, MPI_FLOAT, MPI_SUM, 0, comm_));
    }
    MPI_CHECK(MPI_Bcast(chunk, piece, MPI_FLOAT, 0, comm_));
  }
}

// Both collectives move world * piece floats per call: pieces keep that within kMaxMpiFloats, each
// gathered (or exchanged) into a scratch buffer and laid out from there.
void MpiCommunicator::allgather(const float* send, int64_t count, float* recv) {
  const CollectiveScope scope(session_.watchdog(), "all-gather");
  const int64_t most = std::max<int64_t>(kMaxMpiFloats / world_, 1);
  if (count <= most) {
    const int piece = static_cast<int>(count);
    MPI_CHECK(MPI_Allgather(send, piece, MPI_FLOAT, recv, piece, MPI_FLOAT, comm_));
    return;
  }
  std::vector<float> gathered;
  for (int64_t begin = 0; begin < count; begin += most) {
    const int64_t piece = std::min(most, count - begin);
    gathered.resize(static_cast<size_t>(world_ * piece));
    MPI_CHECK(MPI_Allgather(send + begin, static_cast<int>(piece), MPI_FLOAT, gathered.data(), static_cast<int>(piece),
                            MPI_FLOAT, comm_));
    for (int r = 0; r < world_; ++r) {
      std::copy_n(gathered.data() + r * piece, piece, recv + r * count + begin);
    }
  }
}

void MpiCommunicator::alltoall(const float* send, int64_t count, float* recv) {
  const CollectiveScope scope(session_.watchdog(), "all-to-all");
  const int64_t most = std::max<int64_t>(kMaxMpiFloats / world_, 1);
  if (count <= most) {
    const int piece = static_cast<int>(count);
    MPI_CHECK(MPI_Alltoall(send, piece, MPI_FLOAT, recv, piece, MPI_FLOAT, comm_));
    return;
  }
  std::vector<float> outgoing, incoming;
  for (int64_t begin = 0; begin < count; begin += most) {
    const int64_t piece = std::min(most, count - begin);
    outgoing.resize(static_cast<size_t>(world_ * piece));
    incoming.resize(outgoing.size());
    for (int r = 0; r < world_; ++r) std::copy_n(send + r * count + begin, piece, outgoing.data() + r * piece);
    MPI_CHECK(MPI_Alltoall(outgoing.data(), static_cast<int>(piece), MPI_FLOAT, incoming.data(),
                           static_cast<int>(piece), MPI_FLOAT, comm_));
    for (int r = 0; r < world_; ++r) std::copy_n(incoming.data() + r * piece, piece, recv + r * count + begin);
  }
}

std::string mpi_library_version() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  MPI_CHECK(MPI_Get_library_version(version, &length));
  const std::string text(version, static_cast<size_t>(length));
  return text.substr(0, text.find_first_of(",\n"));
}

std::string launcher_rank() {
  for (const char* variable : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    if (const char* rank = std::getenv(variable)) return rank;
  }
  return "0";
}

int run_mpi_command(const char* program, int* argc, char*** argv, const WatchdogSettings& settings,
                    const std::function<int(MpiSession&)>& body) {
  const bool leader = launcher_rank() == "0";
  // From here on no rank waits forever, MPI's start-up included.
  Watchdog watchdog(settings.timeout_s, program, "rank " + launcher_rank() + " (" + this_host_name() + ")",
                    settings.limit_name);
  watchdog.progress("MPI start-up");
  if (!settings.progress_file.empty()) watchdog.set_progress_file(settings.progress_file + ".rank" + launcher_rank());
  std::unique_ptr<MpiSession> session;
  try {
    session = std::make_unique<MpiSession>(argc, argv);
  } catch (const MpiError& error) {
    std::fprintf(stderr, "%s: error: %s\n", program, error.what());
    return 1;
  }
  watchdog.end_startup();
  session->set_watchdog(&watchdog);
  try {
    return body(*session);
  } catch (const RankFailure& error) {
    std::fflush(stdout);
    if (leader) std::fprintf(stderr, "%s: error: %s\n", program, error.what());
    return kRankFailureExitCode;
  } catch (const UserError& error) {
    std::fflush(stdout);
    if (leader) std::fprintf(stderr, "%s: error: %s\n", program, error.what());
    return kUserErrorExitCode;
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: internal error on %s: %s\n", program, session->label().c_str(), error.what());
    if (session->world() > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace mla
