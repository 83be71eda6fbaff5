//! An HTTP stand-in for an outside service (a cloud's API): an axum router served on
//! `127.0.0.1:0` from its own thread and runtime, so tests of any flavour can use it, and
//! stopped (its thread joined) when dropped. The stand-ins themselves (`hetzner_api`,
//! `cml_api`) are what the services' documentation describes, not the services.

/// A router being served. Stopped on drop.
pub struct StubServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StubServer {
    /// Serves `router` on a free loopback port; `name` names the thread and the panics.
    pub fn start(name: &str, router: axum::Router) -> StubServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name}: binding 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let what = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the stand-in's runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        served = axum::serve(listener, router) => {
                            served.unwrap_or_else(|e| panic!("{what} stopped serving: {e}"));
                        }
                        _ = stopped => {}
                    }
                });
            })
            .unwrap_or_else(|e| panic!("{name}: starting its thread: {e}"));
        StubServer {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
