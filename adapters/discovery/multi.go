package discovery

import (
	"context"
	"errors"
	"sync"

	"github.com/goop-p2p/goop/domain/mq"
	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

// Combine joins several discoveries into one (e.g. this LAN adapter and a
// rendezvous client for the WAN): Publish goes to each, Dial to each (those
// that cannot dial ignore it), and their events are merged into one
// channel of queue events (default DefaultEventQueue). A member whose events
// are not read in time drops them itself, as its contract says. Close closes
// every member and then the merged channel. Safe for concurrent use.
func Combine(queue int, ds ...ports.Discovery) ports.Discovery {
	if queue <= 0 {
		queue = DefaultEventQueue
	}
	m := &multi{ds: ds, events: make(chan ports.DiscoveryEvent, queue), stop: make(chan struct{})}
	m.wg.Add(len(ds))
	for _, d := range ds {
		go func() {
			defer m.wg.Done()
			for ev := range d.Events() {
				select {
				case m.events <- ev:
				case <-m.stop:
				}
			}
		}()
	}
	return m
}

type multi struct {
	ds        []ports.Discovery
	events    chan ports.DiscoveryEvent
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

func (m *multi) Publish(msg presence.Msg) error {
	var errs []error
	for _, d := range m.ds {
		if err := d.Publish(msg); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *multi) Dial(ctx context.Context, peer mq.PeerID, addrs []string) {
	for _, d := range m.ds {
		d.Dial(ctx, peer, addrs)
	}
}

func (m *multi) Events() <-chan ports.DiscoveryEvent { return m.events }

func (m *multi) Close() error {
	m.closeOnce.Do(func() {
		var errs []error
		for _, d := range m.ds {
			if err := d.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		close(m.stop)
		m.wg.Wait()
		close(m.events)
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}
