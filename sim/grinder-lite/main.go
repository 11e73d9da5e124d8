// grinder-lite: the grinder simulator's subset that `make bench` and the operator use, as one
// static binary (stdlib only), so that 300 simulated routers fit beside the operator on a 2-core
// machine. sim/grinder/grinder_sim.py is the reference (its docstring is the contract): the same
// environment, log lines, /metrics families, gate, breaker and POST /sim/faults semantics, and
// tests/integration/test_sim_lite.py runs both side by side.
//
// Left out, as the bench does not use them: the resolution artifact file (GRINDER_ARTIFACT_DIR is
// ignored; the line says THRESHOLD_RESOLUTION_ARTIFACT_SKIPPED reason=grinder_lite), the
// thresholdJumpBps fault (a 400, as any unknown key), GET /sim/state and GET /sim/faults, and the
// preflight script (the bench runs no preflight Job; use grinder-sim:local where one runs).
// Different: the random order stream (GRINDER_SIM_SEED seeds Go's PCG, not Python's Mersenne
// Twister); below 5 orders/s per symbol the order loop ticks twice per order, not 10 times a
// second (the same orders, fewer wake-ups); the wording of JSON syntax errors, OS errors and
// invalid-config messages.
//
// The image grinder-lite:local (FROM scratch) is built by testbed/images.sh.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	cbWindow    = 50 // orders per symbol the breaker's block rate is taken over
	ticksPerSec = 10
	maxBps      = 10000
)

// emit prints one log line in one write, so lines from the HTTP and order goroutines never mix.
func emit(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) }

// ------------------------------------------------------------------------------- config

type config struct {
	podIP                     string
	port, configuredBps       int
	enforce, autoThreshold    bool
	allowlist, symbols        []string // an empty allowlist = every symbol (runbook Phase 4)
	modelDir, evalDir, seed   string   // seed "" = random
	ordersPerSec, cbBlockRate float64
}

func (c *config) enforced(symbol string) bool {
	return c.enforce && (len(c.allowlist) == 0 || slices.Contains(c.allowlist, symbol))
}

func env(name string) string { return strings.TrimSpace(os.Getenv(name)) }

func flag(name string) bool {
	return slices.Contains([]string{"1", "true", "yes", "on"}, strings.ToLower(env(name)))
}

// number reads a numeric variable in lo..hi (an integer when integer is set); *err keeps the
// first invalid one, in the order the Python simulator checks them.
func number(err *error, name string, def, lo, hi float64, integer bool) float64 {
	raw := env(name)
	if raw == "" || *err != nil {
		return def
	}
	v, perr := strconv.ParseFloat(raw, 64)
	if integer {
		var i int
		i, perr = strconv.Atoi(raw)
		v = float64(i)
	}
	if perr != nil {
		*err = fmt.Errorf("%s=%q is not %s", name, os.Getenv(name), map[bool]string{true: "an integer", false: "a number"}[integer])
	} else if !(lo <= v && v <= hi) {
		*err = fmt.Errorf("%s=%g is outside %g..%g", name, v, lo, hi)
	}
	return v
}

// parseSymbols: a comma list, stripped, empties dropped, order kept, duplicates removed.
func parseSymbols(raw string) []string {
	out := []string{}
	for _, part := range strings.Split(raw, ",") {
		if part = strings.TrimSpace(part); part != "" && !slices.Contains(out, part) {
			out = append(out, part)
		}
	}
	return out
}

func loadConfig() (*config, error) {
	c := &config{symbols: []string{"SYM1", "SYM2", "SYM3", "SYM4", "SYM5", "SYM6", "SYM7", "SYM8"}}
	if raw := os.Getenv("GRINDER_SIM_SYMBOLS"); raw != "" {
		if c.symbols = parseSymbols(raw); len(c.symbols) == 0 {
			return nil, errors.New("GRINDER_SIM_SYMBOLS lists no symbol")
		}
	}
	if c.seed = env("GRINDER_SIM_SEED"); c.seed != "" {
		if _, err := strconv.ParseInt(c.seed, 10, 64); err != nil {
			return nil, fmt.Errorf("GRINDER_SIM_SEED=%q is not an integer", c.seed)
		}
	}
	var err error
	if c.podIP = env("POD_IP"); c.podIP == "" {
		c.podIP = "127.0.0.1"
	}
	c.port = int(number(&err, "GRINDER_SIM_PORT", 9090, 0, 65535, true))
	c.enforce, c.autoThreshold = flag("GRINDER_FILL_MODEL_ENFORCE"), flag("GRINDER_FILL_PROB_AUTO_THRESHOLD")
	c.allowlist = parseSymbols(os.Getenv("GRINDER_FILL_PROB_ENFORCE_SYMBOLS"))
	c.configuredBps = int(number(&err, "GRINDER_FILL_PROB_MIN_BPS", 2500, 0, maxBps, true))
	c.modelDir, c.evalDir = env("GRINDER_FILL_MODEL_DIR"), env("GRINDER_FILL_PROB_EVAL_DIR")
	c.ordersPerSec = number(&err, "GRINDER_SIM_ORDERS_PER_SEC", 20, 0, 100000, false)
	c.cbBlockRate = number(&err, "GRINDER_SIM_CB_BLOCK_RATE", 0.9, 0, 1, false)
	return c, err
}

// ------------------------------------------------------------------ threshold resolution

type resolution struct {
	status, mode       string // status: ok | failed | skipped; mode: recommend_only | auto_apply
	configuredBps      int
	recommendedBps     int // when ok
	reasonCode, detail string
}

// effectiveBps: the recommended threshold in auto_apply; else, and when resolution failed or
// was skipped (the manual fallback, runbook R3), the configured one.
func (r resolution) effectiveBps() int {
	if r.status == "ok" && r.mode == "auto_apply" {
		return r.recommendedBps
	}
	return r.configuredBps
}

func (r resolution) logLine() string {
	switch r.status {
	case "ok":
		return fmt.Sprintf("FILL_PROB_THRESHOLD_RESOLUTION_OK mode=%s recommended_bps=%d configured_bps=%d effective_bps=%d",
			r.mode, r.recommendedBps, r.configuredBps, r.effectiveBps())
	case "failed":
		return fmt.Sprintf("FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=%s detail=%s", r.reasonCode, r.detail)
	}
	return "THRESHOLD_RESOLVE_SKIPPED reason=" + r.reasonCode
}

func resolve(c *config) resolution {
	r := resolution{status: "ok", mode: "recommend_only", configuredBps: c.configuredBps}
	if c.autoThreshold {
		r.mode = "auto_apply"
	}
	if c.modelDir == "" {
		r.status, r.reasonCode = "skipped", "model_dir_unset"
	} else if bps, code, detail := readRecommendedBps(c); code != "" {
		r.status, r.reasonCode, r.detail = "failed", code, strings.Join(strings.Fields(detail), " ")
	} else {
		r.recommendedBps = bps
	}
	return r
}

// readRecommendedBps: recommended_bps from <eval dir>/eval_report.json, or a reason code and detail.
func readRecommendedBps(c *config) (int, string, string) {
	var missing []string
	for _, name := range []string{"manifest.json", "model.json"} {
		if !isFile(join(c.modelDir, name)) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return 0, "model_files_missing", fmt.Sprintf("%s lacks %s", c.modelDir, strings.Join(missing, ","))
	}
	if c.evalDir == "" {
		return 0, "eval_dir_unset", "GRINDER_FILL_PROB_EVAL_DIR is not set"
	}
	report := join(c.evalDir, "eval_report.json")
	if !isFile(report) {
		return 0, "eval_report_missing", report + " does not exist"
	}
	data, err := os.ReadFile(report)
	if err != nil {
		return 0, "eval_report_unreadable", fmt.Sprintf("%s: %v", report, errors.Unwrap(err))
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // 2500.0 is not an int, as in Python
	if err = dec.Decode(&doc); err == nil && dec.More() {
		err = errors.New("extra data after the JSON value")
	}
	if err != nil {
		return 0, "eval_report_invalid_json", fmt.Sprintf("%s: %v", report, err)
	}
	obj, isObject := doc.(map[string]any)
	value, has := obj["recommended_bps"]
	if !isObject || !has {
		return 0, "recommended_bps_missing", report + " has no recommended_bps"
	}
	number, _ := value.(json.Number)
	if bps, err := strconv.Atoi(string(number)); err == nil && 0 <= bps && bps <= maxBps {
		return bps, "", ""
	}
	text, _ := json.Marshal(value)
	return 0, "recommended_bps_invalid", fmt.Sprintf("%s: recommended_bps=%s is not an int in 0..%d", report, text, maxBps)
}

// -------------------------------------------------------------------------- simulation

type symbolState struct {
	orders, blocks int
	window         [cbWindow]bool // the last orders, blocked or not: a ring
	filled, next   int
	windowBlocks   int
	tripped        bool
}

type simulator struct {
	mu                            sync.Mutex
	cfg                           *config
	res                           resolution
	rng                           *rand.Rand
	state                         map[string]*symbolState
	cbTripsTotal, injectedCbTrips int
	blockAll                      bool
	carry                         float64
	startedAt                     time.Time
}

func newSimulator(c *config, r resolution) *simulator {
	seed, err := strconv.ParseInt(c.seed, 10, 64)
	if err != nil {
		seed = rand.Int64()
	}
	s := &simulator{cfg: c, res: r, rng: rand.New(rand.NewPCG(uint64(seed), 0)), state: map[string]*symbolState{}, startedAt: time.Now()}
	for _, sym := range c.symbols {
		s.state[sym] = &symbolState{}
	}
	return s
}

// advance simulates `seconds` of order flow for every symbol: each order's fill probability is
// uniform over 0..10000 bps, and an enforced order below the threshold (or any enforced order
// under blockAll) is blocked. The caller holds mu.
func (s *simulator) advance(seconds float64) {
	due := s.cfg.ordersPerSec*seconds + s.carry
	n := int(due)
	s.carry = due - float64(n)
	threshold := float64(s.res.effectiveBps())
	for _, sym := range s.cfg.symbols {
		st, enforced := s.state[sym], s.cfg.enforced(sym)
		for range n {
			blocked := enforced && (s.blockAll || s.rng.Float64()*maxBps < threshold)
			if st.filled == cbWindow && st.window[st.next] {
				st.windowBlocks--
			}
			st.window[st.next], st.next, st.filled = blocked, (st.next+1)%cbWindow, min(st.filled+1, cbWindow)
			st.orders++
			if blocked {
				st.blocks++
				st.windowBlocks++
			}
			s.checkBreaker(sym, st)
		}
	}
}

// checkBreaker trips once when the block rate over the last 50 orders exceeds the limit, and
// re-arms at half the limit or below (hysteresis: no log spam while every order is blocked).
func (s *simulator) checkBreaker(sym string, st *symbolState) {
	if st.filled < cbWindow {
		return
	}
	rate := float64(st.windowBlocks) / cbWindow
	if !st.tripped && rate > s.cfg.cbBlockRate {
		st.tripped = true
		s.trip(sym, st, rate, "block_rate")
	} else if st.tripped && rate <= s.cfg.cbBlockRate/2 {
		st.tripped = false
		emit("FILL_PROB_CIRCUIT_BREAKER_REARMED symbol=%s rate_pct=%.1f", sym, rate*100)
	}
}

func (s *simulator) trip(sym string, st *symbolState, rate float64, source string) {
	s.cbTripsTotal++
	emit("FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=%d rate_pct=%.1f symbol=%s source=%s", st.windowBlocks, rate*100, sym, source)
}

// faults is a POST /sim/faults body: its keys merge into the fault state, and {} clears it.
type faults struct {
	CbTrip   *bool   `json:"cbTrip"`   // one breaker trip now (counter and log line)
	BlockAll *bool   `json:"blockAll"` // block every enforced order
	Symbol   *string `json:"symbol"`   // cbTrip's symbol; default: the first enforced, else the first
}

func (s *simulator) applyFaults(f faults) (map[string]any, error) {
	if f.Symbol != nil && s.state[*f.Symbol] == nil {
		return nil, fmt.Errorf("symbol %q is not simulated; symbols: %q", *f.Symbol, s.cfg.symbols)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == (faults{}) {
		s.blockAll = false
		emit("GRINDER_SIM_FAULTS_CLEARED")
		return s.faultState(), nil
	}
	if f.BlockAll != nil {
		s.blockAll = *f.BlockAll
	}
	if f.CbTrip != nil && *f.CbTrip {
		symbol := s.cfg.symbols[max(0, slices.IndexFunc(s.cfg.symbols, s.cfg.enforced))]
		if f.Symbol != nil {
			symbol = *f.Symbol
		}
		st, rate := s.state[symbol], 0.0
		if st.filled > 0 {
			rate = float64(st.windowBlocks) / float64(st.filled)
		}
		s.injectedCbTrips++
		s.trip(symbol, st, rate, "fault")
	}
	recommended := "None"
	if s.res.status == "ok" {
		recommended = strconv.Itoa(s.res.recommendedBps)
	}
	emit("GRINDER_SIM_FAULTS_APPLIED block_all=%d threshold_jump_bps=0 recommended_bps=%s effective_bps=%d",
		b2i(s.blockAll), recommended, s.res.effectiveBps())
	return s.faultState(), nil
}

func (s *simulator) faultState() map[string]any {
	state := map[string]any{"blockAll": s.blockAll, "injectedCbTrips": s.injectedCbTrips, "recommendedBps": nil, "effectiveBps": s.res.effectiveBps()}
	if s.res.status == "ok" {
		state["recommendedBps"] = s.res.recommendedBps
	}
	return state
}

// metrics: Prometheus text 0.0.4, grinder_sim.py's families in its order, with its HELP texts.
func (s *simulator) metrics() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	family := func(name, kind, help string, samples ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
		for _, sample := range samples {
			b.WriteString(name + sample + "\n")
		}
	}
	perSymbol := func(count func(*symbolState) int) (out []string) {
		for _, sym := range s.cfg.symbols {
			out = append(out, fmt.Sprintf(`{symbol="%s"} %d`, escape(sym), count(s.state[sym])))
		}
		return out
	}
	gauge, recommended := 0, "" // the recommended threshold; 0 when resolution failed or was skipped
	if s.res.status == "ok" {
		gauge, recommended = s.res.recommendedBps, strconv.Itoa(s.res.recommendedBps)
	}
	family("grinder_router_fill_prob_enforce_enabled", "gauge", "1 = enforcement on, 0 = shadow", fmt.Sprintf(" %d", b2i(s.cfg.enforce)))
	family("grinder_router_fill_prob_enforce_allowlist_enabled", "gauge", "1 = symbol allowlist active, 0 = all symbols",
		fmt.Sprintf(" %d", b2i(len(s.cfg.allowlist) > 0)))
	family("grinder_router_fill_prob_blocks_total", "counter", "Orders blocked by fill-prob gate, per symbol (sum() for the total)",
		perSymbol(func(st *symbolState) int { return st.blocks })...)
	family("grinder_router_fill_prob_cb_trips_total", "counter", "Circuit breaker trips", fmt.Sprintf(" %d", s.cbTripsTotal))
	family("grinder_router_fill_prob_auto_threshold_bps", "gauge", "Resolved threshold from eval (0 = disabled/failed)", fmt.Sprintf(" %d", gauge))
	family("grinder_router_orders_total", "counter", "Orders seen by the router, per symbol",
		perSymbol(func(st *symbolState) int { return st.orders })...)
	family("grinder_sim_info", "gauge", "Grinder simulator configuration",
		fmt.Sprintf(`{mode="%s",resolution="%s",recommended_bps="%s",configured_bps="%d",effective_bps="%d"} 1`,
			s.res.mode, s.res.status, recommended, s.cfg.configuredBps, s.res.effectiveBps()))
	family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
		" "+strconv.FormatFloat(float64(s.startedAt.UnixMicro())/1e6, 'f', -1, 64))
	return b.String()
}

// orderLoop feeds the simulator the real elapsed time: 10 times a second, as the Python
// simulator does, or twice per order when orders are rarer (at least once a second), so the
// orders come at the same moments with a fifth of the wake-ups at the bench's 1 order/s.
func (s *simulator) orderLoop() {
	every := time.Second
	if rate := s.cfg.ordersPerSec; rate > 0.5 {
		every = max(time.Second/ticksPerSec, time.Duration(float64(time.Second)/(2*rate)))
	}
	last := time.Now()
	for now := range time.Tick(every) {
		s.mu.Lock()
		s.advance(now.Sub(last).Seconds())
		s.mu.Unlock()
		last = now
	}
}

// ------------------------------------------------------------------------------ HTTP

func (s *simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	send := func(code int, contentType, body string) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
	sendJSON := func(code int, v any) { data, _ := json.Marshal(v); send(code, "application/json", string(data)+"\n") }
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case get && r.URL.Path == "/metrics":
		send(200, "text/plain; version=0.0.4; charset=utf-8", s.metrics())
	case get && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz"):
		send(200, "text/plain; charset=utf-8", "ok\n")
	case r.Method == http.MethodPost && r.URL.Path == "/sim/faults":
		var f faults
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields() // thresholdJumpBps too: left out here
		if err := dec.Decode(&f); err != nil {
			sendJSON(400, map[string]string{"error": "body is not a JSON object of cbTrip, blockAll, symbol: " + err.Error()})
		} else if state, err := s.applyFaults(f); err != nil {
			sendJSON(400, map[string]string{"error": err.Error()})
		} else {
			sendJSON(200, state)
		}
	default:
		sendJSON(404, map[string]string{"error": "no such path " + r.URL.Path})
	}
}

// ------------------------------------------------------------------------------ main

func main() { os.Exit(run()) }

func run() int {
	cfg, err := loadConfig()
	if err != nil {
		emit("GRINDER_SIM_CONFIG_INVALID detail=%s", err)
		return 2
	}
	res := resolve(cfg)
	emit("%s", res.logLine())
	emit("THRESHOLD_RESOLUTION_ARTIFACT_SKIPPED reason=grinder_lite")
	sim := newSimulator(cfg, res)
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.podIP, strconv.Itoa(cfg.port)))
	if err != nil {
		emit("GRINDER_SIM_BIND_FAILED addr=%s:%d detail=%v", cfg.podIP, cfg.port, err)
		return 1
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	server := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	go server.Serve(ln)
	go sim.orderLoop()
	emit("GRINDER_SIM_STARTED pod_ip=%s port=%d symbols=%s enforce=%d allowlist=%s effective_bps=%d orders_per_sec=%.6g seed=%s",
		cfg.podIP, ln.Addr().(*net.TCPAddr).Port, strings.Join(cfg.symbols, ","), b2i(cfg.enforce),
		strings.Join(cfg.allowlist, ","), res.effectiveBps(), cfg.ordersPerSec, cfg.seed)
	<-stop
	emit("GRINDER_SIM_STOPPING")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	server.Shutdown(ctx)
	return 0
}

// ----------------------------------------------------------------------------- helpers

func isFile(path string) bool { fi, err := os.Stat(path); return err == nil && fi.Mode().IsRegular() }

// join as Python's os.path.join (no cleaning), so the paths in log lines are the same.
func join(dir, name string) string { return strings.TrimSuffix(dir, "/") + "/" + name }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

var escape = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace
