package bridge

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
)

// Reload is a bridge reload whose files were read and checked; Commit
// puts it in force. Sessions, held polls and device WebSockets are not
// touched.
type Reload struct {
	b       *Bridge
	tokens  *tokenStore // nil: not token identity
	maxBody int64
	flap    config.Flapping
	newFlap bool
}

// PrepareReload reads what of c and lim can change while the bridge runs:
// the tokens file (identity.tokens, path included), limits.max_body and
// limits.flapping. Nothing changes until Commit. The caller reports the
// other differences as needing a restart.
func (b *Bridge) PrepareReload(c config.Bridge, lim config.Limits) (*Reload, error) {
	r := &Reload{b: b, maxBody: int64(lim.MaxBody), flap: lim.Flapping, newFlap: lim.Flapping != b.lim.Flapping}
	if b.ident.cfg.From == "token" && c.Identity.From == "token" {
		s, err := loadTokens(c.Identity.Tokens)
		if err != nil {
			return nil, fmt.Errorf("identity.tokens: %w", err)
		}
		r.tokens = s
	}
	return r, nil
}

// Commit swaps the prepared state in. Changed flapping settings start
// counting afresh (bans in force are lifted).
func (r *Reload) Commit() {
	b := r.b
	if r.tokens != nil {
		old := b.ident.tokens.Swap(r.tokens)
		b.log.Info("device tokens loaded", "devices", r.tokens.Len(), "before", old.Len())
	}
	b.liveMax.Store(r.maxBody)
	if r.newFlap {
		b.flap.Store(newFlapping(r.flap, b.cfg.Session.Max, b.now, b.log))
		b.lim.Flapping = r.flap
	}
}

func newFlapping(f config.Flapping, tracked int, now func() time.Time, log *slog.Logger) *limits.Flapping {
	if f.Max <= 0 {
		return nil
	}
	return limits.NewFlapping(limits.FlappingOptions{Max: f.Max, Window: f.Window.D(), Ban: f.Ban.D(), Tracked: tracked, Now: now, Logger: log})
}
